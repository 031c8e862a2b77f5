// The Java client (kafka-clients 4.x) over SASL_PLAINTEXT, or over SASL_SSL when CA_PEM (the
// broker's CA, a PEM truststore) is given: a producer (acks=all) sends RECORDS records to
// partition 0, a client with a wrong password is refused in the middle of them, and a group
// consumer reads them back, all logged in with MECHANISM (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)
// as USER/PASSWORD through `sasl.jaas.config`. Prints one `key=value` line per fact for
// tests/integration/test_sasl.py and test_tls.py; exits non-zero on a mismatch.
// Usage: SluiceSaslClient BOOTSTRAP TOPIC RECORDS GROUP MECHANISM USER PASSWORD [CA_PEM]
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class SluiceSaslClient {
    static Properties login(String bootstrap, String mechanism, String user, String password,
                            String caPem) {
        String module = mechanism.equals("PLAIN")
            ? "org.apache.kafka.common.security.plain.PlainLoginModule"
            : "org.apache.kafka.common.security.scram.ScramLoginModule";
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("security.protocol", caPem == null ? "SASL_PLAINTEXT" : "SASL_SSL");
        if (caPem != null) {
            props.put("ssl.truststore.type", "PEM");
            props.put("ssl.truststore.location", caPem);
        }
        props.put("sasl.mechanism", mechanism);
        props.put("sasl.jaas.config",
            module + " required username=\"" + user + "\" password=\"" + password + "\";");
        return props;
    }

    // The simple name of the innermost cause of a wrong password's failure ("none" if the
    // login was accepted).
    static String refusal(Properties bad) {
        try (Admin admin = Admin.create(bad)) {
            admin.describeCluster().clusterId().get(30, TimeUnit.SECONDS);
            return "none";
        } catch (Exception e) {
            Throwable cause = e;
            while (cause.getCause() != null) {
                cause = cause.getCause();
            }
            return cause.getClass().getSimpleName();
        }
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = args[1];
        int records = Integer.parseInt(args[2]);
        String group = args[3];
        String mechanism = args[4];
        String user = args[5];
        String password = args[6];
        String caPem = args.length > 7 ? args[7] : null;
        Properties common = login(bootstrap, mechanism, user, password, caPem);

        Properties p = new Properties();
        p.putAll(common);
        p.put("key.serializer", ByteArraySerializer.class.getName());
        p.put("value.serializer", ByteArraySerializer.class.getName());
        List<byte[]> sent = new ArrayList<>();
        int offsetsInOrder = 0;
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p)) {
            for (int i = 0; i < records; i++) {
                if (i == records / 2) {
                    System.out.println("refused=" + refusal(
                        login(bootstrap, mechanism, user, password + "-wrong", caPem)));
                }
                byte[] value = ("java-" + i + "-\u00e9\u0000\u00ff").getBytes("UTF-8");
                sent.add(value);
                long offset = producer.send(new ProducerRecord<>(topic, 0,
                    ("k-" + i).getBytes("UTF-8"), value)).get().offset();
                if (offset == i) {
                    offsetsInOrder++;
                }
            }
        }
        System.out.println("produced=" + sent.size());
        System.out.println("offsets_in_order=" + offsetsInOrder);

        Properties c = new Properties();
        c.putAll(common);
        c.put("group.id", group);
        c.put("auto.offset.reset", "earliest");
        c.put("key.deserializer", ByteArrayDeserializer.class.getName());
        c.put("value.deserializer", ByteArrayDeserializer.class.getName());
        // matched: records equal to the one sent at their offset (key and value, byte for
        // byte), read in offset order.
        int matched = 0;
        int seen = 0;
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(c)) {
            consumer.subscribe(List.of(topic));
            long deadline = System.currentTimeMillis() + 60_000;
            while (seen < records && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(500))) {
                    if (r.offset() == seen && seen < records
                        && Arrays.equals(("k-" + seen).getBytes("UTF-8"), r.key())
                        && Arrays.equals(sent.get(seen), r.value())) {
                        matched++;
                    }
                    seen++;
                }
            }
        }
        System.out.println("consumed=" + seen);
        System.out.println("matched=" + matched);
        if (matched != records || offsetsInOrder != records) {
            System.exit(1);
        }
    }
}
