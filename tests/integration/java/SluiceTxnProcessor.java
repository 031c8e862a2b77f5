// A Kafka 4.x consume-transform-produce loop against Sluice, for
// test_transactions_cluster_v2.py: at transaction.version 2 the client sends its offsets with
// TxnOffsetCommit v5 (no AddOffsetsToTxn), so the group's coordinator adds the offsets
// partition at the transaction's coordinator itself.
//
// Usage: SluiceTxnProcessor BOOTSTRAP TXN_ID GROUP IN OUT PATTERN BATCH
//   reads partition 0 of IN (read_committed, group GROUP, assigned); one transaction per
//   PATTERN letter of exactly BATCH input records, each written as "o-<value>" to partition
//   (index % 3) of OUT, the offsets sent to the transaction; C commits, A aborts (and seeks
//   back to the last committed offset). Prints `DONE <k> <letter> <committed offset or -1>`.
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class SluiceTxnProcessor {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], txnId = args[1], group = args[2], in = args[3], out = args[4];
        String pattern = args[5];
        int batch = Integer.parseInt(args[6]);

        Properties pp = new Properties();
        pp.put("bootstrap.servers", bootstrap);
        pp.put("transactional.id", txnId);
        pp.put("linger.ms", "5");
        pp.put("max.block.ms", "30000");
        pp.put("delivery.timeout.ms", "30000");
        pp.put("request.timeout.ms", "10000");
        Properties cp = new Properties();
        cp.put("bootstrap.servers", bootstrap);
        cp.put("group.id", group);
        cp.put("enable.auto.commit", "false");
        cp.put("auto.offset.reset", "earliest");
        cp.put("isolation.level", "read_committed");
        cp.put("max.poll.records", String.valueOf(batch));

        TopicPartition source = new TopicPartition(in, 0);
        try (KafkaProducer<byte[], byte[]> p =
                 new KafkaProducer<>(pp, new ByteArraySerializer(), new ByteArraySerializer());
             KafkaConsumer<byte[], byte[]> c =
                 new KafkaConsumer<>(cp, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            p.initTransactions();
            c.assign(List.of(source));
            long committed = 0;
            c.seek(source, committed);
            for (int k = 0; k < pattern.length(); k++) {
                List<ConsumerRecord<byte[], byte[]>> taken = new ArrayList<>();
                long deadline = System.currentTimeMillis() + 30000;
                while (taken.size() < batch && System.currentTimeMillis() < deadline) {
                    for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(200))) {
                        if (taken.size() < batch) taken.add(r);
                    }
                }
                if (taken.size() < batch) throw new IllegalStateException("input ran out at " + k);
                long next = taken.get(taken.size() - 1).offset() + 1;
                c.seek(source, next);
                p.beginTransaction();
                for (ConsumerRecord<byte[], byte[]> r : taken) {
                    String value = new String(r.value());
                    p.send(new ProducerRecord<>(out, (int) (r.offset() % 3), null,
                        ("o-" + value).getBytes()));
                }
                p.sendOffsetsToTransaction(Map.of(source, new OffsetAndMetadata(next)),
                    c.groupMetadata());
                if (pattern.charAt(k) == 'C') {
                    p.commitTransaction();
                    committed = next;
                } else {
                    p.abortTransaction();
                    c.seek(source, committed);
                }
                OffsetAndMetadata stored = c.committed(Set.of(source)).get(source);
                System.out.println("DONE " + k + " " + pattern.charAt(k) + " "
                    + (stored == null ? -1 : stored.offset()));
                System.out.flush();
            }
        }
    }
}
