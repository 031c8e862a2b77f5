// The Java client (kafka-clients 4.x) over SASL_PLAINTEXT: a producer (acks=all) sends RECORDS
// records and a group consumer reads them back, both logged in with MECHANISM (PLAIN,
// SCRAM-SHA-256, SCRAM-SHA-512) as USER/PASSWORD through `sasl.jaas.config`. Prints one
// `key=value` line per fact for tests/integration/test_sasl.py; exits non-zero on a mismatch.
// Usage: SluiceSaslClient BOOTSTRAP TOPIC RECORDS GROUP MECHANISM USER PASSWORD
import java.time.Duration;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class SluiceSaslClient {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = args[1];
        int records = Integer.parseInt(args[2]);
        String group = args[3];
        String mechanism = args[4];
        String user = args[5];
        String password = args[6];
        String module = mechanism.equals("PLAIN")
            ? "org.apache.kafka.common.security.plain.PlainLoginModule"
            : "org.apache.kafka.common.security.scram.ScramLoginModule";

        Properties common = new Properties();
        common.put("bootstrap.servers", bootstrap);
        common.put("security.protocol", "SASL_PLAINTEXT");
        common.put("sasl.mechanism", mechanism);
        common.put("sasl.jaas.config",
            module + " required username=\"" + user + "\" password=\"" + password + "\";");

        Properties p = new Properties();
        p.putAll(common);
        p.put("key.serializer", ByteArraySerializer.class.getName());
        p.put("value.serializer", ByteArraySerializer.class.getName());
        Map<String, byte[]> sent = new HashMap<>();
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p)) {
            for (int i = 0; i < records; i++) {
                String key = "k-" + i;
                byte[] value = ("java-" + i + "-\u00e9\u0000\u00ff").getBytes("UTF-8");
                sent.put(key, value);
                producer.send(new ProducerRecord<>(topic, key.getBytes("UTF-8"), value)).get();
            }
        }
        System.out.println("produced=" + sent.size());

        Properties c = new Properties();
        c.putAll(common);
        c.put("group.id", group);
        c.put("auto.offset.reset", "earliest");
        c.put("key.deserializer", ByteArrayDeserializer.class.getName());
        c.put("value.deserializer", ByteArrayDeserializer.class.getName());
        int matched = 0;
        int seen = 0;
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(c)) {
            consumer.subscribe(List.of(topic));
            long deadline = System.currentTimeMillis() + 60_000;
            while (seen < records && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(500))) {
                    seen++;
                    byte[] expected = sent.get(new String(r.key(), "UTF-8"));
                    if (expected != null && Arrays.equals(expected, r.value())) {
                        matched++;
                    }
                }
            }
        }
        System.out.println("consumed=" + seen);
        System.out.println("matched=" + matched);
        if (matched != records) {
            System.exit(1);
        }
    }
}
