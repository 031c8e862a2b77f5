// A Kafka 4.x transactional producer against Sluice, for test_transactions_v2.py. Whether it
// speaks transaction protocol v2 (KIP-890) is the client's own choice, from the finalized
// `transaction.version` feature the broker advertises; the test checks which it used.
//
// Usage: SluiceTxnProducer run BOOTSTRAP TXN_ID TOPIC PATTERN RECORDS
//          one transaction per PATTERN letter (C commits, A aborts), each RECORDS records
//          spread over partitions 0..2, values "t<k>-<i>"; prints `DONE <k> <letter>`.
//        SluiceTxnProducer zombie BOOTSTRAP TXN_ID TOPIC
//          producer 1 commits one record, producer 2 initializes the same id, producer 1
//          tries again: prints `FENCED <exception class>` (or `NOT_FENCED`), then producer 2
//          commits `z2` and prints `P2 OK`.
//        SluiceTxnProducer hang BOOTSTRAP TXN_ID TOPIC RECORDS
//          sends RECORDS records in one transaction, prints `SENT`, then commits (the test
//          kills the broker meanwhile) and prints what happened.
import java.util.Properties;
import java.util.concurrent.Future;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class SluiceTxnProducer {
    static KafkaProducer<byte[], byte[]> producer(String bootstrap, String txnId) {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("transactional.id", txnId);
        props.put("linger.ms", "5");
        props.put("max.block.ms", "30000");
        props.put("delivery.timeout.ms", "30000");
        props.put("request.timeout.ms", "10000");
        KafkaProducer<byte[], byte[]> p =
            new KafkaProducer<>(props, new ByteArraySerializer(), new ByteArraySerializer());
        p.initTransactions();
        return p;
    }

    static void send(KafkaProducer<byte[], byte[]> p, String topic, int partition, String value)
            throws Exception {
        p.send(new ProducerRecord<>(topic, partition, null, value.getBytes())).get();
    }

    public static void main(String[] args) throws Exception {
        String mode = args[0];
        String bootstrap = args[1];
        String txnId = args[2];
        String topic = args[3];
        switch (mode) {
            case "run": {
                String pattern = args[4];
                int records = Integer.parseInt(args[5]);
                try (KafkaProducer<byte[], byte[]> p = producer(bootstrap, txnId)) {
                    for (int k = 0; k < pattern.length(); k++) {
                        p.beginTransaction();
                        Future<RecordMetadata> last = null;
                        for (int i = 0; i < records; i++) {
                            last = p.send(new ProducerRecord<>(topic, i % 3, null,
                                ("t" + k + "-" + i).getBytes()));
                        }
                        if (last != null) last.get();
                        if (pattern.charAt(k) == 'C') p.commitTransaction();
                        else p.abortTransaction();
                        System.out.println("DONE " + k + " " + pattern.charAt(k));
                    }
                }
                break;
            }
            case "zombie": {
                KafkaProducer<byte[], byte[]> p1 = producer(bootstrap, txnId);
                p1.beginTransaction();
                send(p1, topic, 0, "z1");
                p1.commitTransaction();
                KafkaProducer<byte[], byte[]> p2 = producer(bootstrap, txnId);
                try {
                    p1.beginTransaction();
                    send(p1, topic, 1, "zombie");
                    p1.commitTransaction();
                    System.out.println("NOT_FENCED");
                } catch (Exception e) {
                    Throwable cause = e.getCause() != null ? e.getCause() : e;
                    System.out.println("FENCED " + e.getClass().getSimpleName() + " "
                        + cause.getClass().getSimpleName());
                }
                try { p1.close(); } catch (Exception ignored) { }
                p2.beginTransaction();
                send(p2, topic, 2, "z2");
                p2.commitTransaction();
                p2.close();
                System.out.println("P2 OK");
                break;
            }
            case "hang": {
                int records = Integer.parseInt(args[4]);
                KafkaProducer<byte[], byte[]> p = producer(bootstrap, txnId);
                p.beginTransaction();
                Future<RecordMetadata> last = null;
                for (int i = 0; i < records; i++) {
                    last = p.send(new ProducerRecord<>(topic, i % 3, null, ("h-" + i).getBytes()));
                }
                last.get();
                System.out.println("SENT");
                System.out.flush();
                try {
                    p.commitTransaction();
                    System.out.println("COMMITTED");
                } catch (Exception e) {
                    System.out.println("COMMIT_FAILED " + e.getClass().getSimpleName());
                }
                System.exit(0);
            }
            default:
                throw new IllegalArgumentException(mode);
        }
    }
}
