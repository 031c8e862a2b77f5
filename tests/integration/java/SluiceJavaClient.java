// The Java client (kafka-clients 4.x) against Sluice with default settings: an Admin creates a
// topic and describes the log dirs, a producer (idempotence on by default, acks=all) sends
// RECORDS keyed records, and a consumer in a group reads them all back. Prints one
// `key=value` line per fact for tests/integration/test_kafka_tools.py to assert; exits
// non-zero on any mismatch. Compiled by that test against `scripts/kafka-peer.sh classpath`.
import java.time.Duration;
import java.util.Arrays;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.stream.Collectors;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.LogDirDescription;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class SluiceJavaClient {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = args[1];
        int records = Integer.parseInt(args[2]);
        String group = args[3];

        Properties common = new Properties();
        common.put("bootstrap.servers", bootstrap);
        try (Admin admin = Admin.create(common)) {
            admin.createTopics(List.of(new NewTopic(topic, 3, (short) 1))).all().get();
            Collection<Node> nodes = admin.describeCluster().nodes().get();
            List<Integer> ids = nodes.stream().map(Node::id).collect(Collectors.toList());
            Map<Integer, Map<String, LogDirDescription>> dirs =
                admin.describeLogDirs(ids).allDescriptions().get();
            for (Map<String, LogDirDescription> byDir : dirs.values()) {
                for (Map.Entry<String, LogDirDescription> e : byDir.entrySet()) {
                    System.out.println("log_dir=" + e.getKey());
                    System.out.println("total_bytes=" + e.getValue().totalBytes().orElse(-1));
                    System.out.println("usable_bytes=" + e.getValue().usableBytes().orElse(-1));
                }
            }
        }

        Properties p = new Properties();
        p.putAll(common);
        p.put("key.serializer", ByteArraySerializer.class.getName());
        p.put("value.serializer", ByteArraySerializer.class.getName());
        Map<String, byte[]> sent = new HashMap<>();
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p)) {
            for (int i = 0; i < records; i++) {
                String key = "k-" + i;
                byte[] value = ("value-" + i + "-\u00e9\u0000\u00ff").getBytes("UTF-8");
                sent.put(key, value);
                producer.send(new ProducerRecord<>(topic, key.getBytes("UTF-8"), value));
            }
            producer.flush();
        }
        System.out.println("produced=" + sent.size());

        Properties c = new Properties();
        c.putAll(common);
        c.put("group.id", group);
        c.put("auto.offset.reset", "earliest");
        c.put("key.deserializer", ByteArrayDeserializer.class.getName());
        c.put("value.deserializer", ByteArrayDeserializer.class.getName());
        int matched = 0;
        Set<String> seen = new java.util.HashSet<>();
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(c)) {
            consumer.subscribe(List.of(topic));
            long deadline = System.currentTimeMillis() + 60_000;
            while (seen.size() < records && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(500))) {
                    String key = new String(r.key(), "UTF-8");
                    if (seen.add(key) && Arrays.equals(sent.get(key), r.value())) {
                        matched++;
                    }
                }
            }
            consumer.commitSync();
            // Keep fetching a little with the data all read: a session's later fetches are
            // incremental (KIP-227) when the broker supports sessions.
            for (int i = 0; i < 6; i++) {
                consumer.poll(Duration.ofMillis(300));
            }
        }
        System.out.println("consumed=" + seen.size());
        System.out.println("matched=" + matched);
        if (matched != records) {
            System.exit(1);
        }
    }
}
