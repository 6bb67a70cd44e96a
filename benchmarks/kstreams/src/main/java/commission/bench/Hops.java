package commission.bench;

import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;

import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * The runner passthrough's topology on Kafka Streams: one application per hop
 * ("input:output" arguments), each copying its records unchanged and counting them
 * per key in a state store (in memory, changelogged): a stateful hop under
 * exactly_once_v2, one stream thread, Kafka Streams' defaults otherwise
 * (commit.interval.ms 100 under exactly-once unless given).
 *
 *   java commission.bench.Hops BOOTSTRAP APP_PREFIX COMMIT_MS STATE_DIR in:out ...
 */
public final class Hops {
    static final String STORE = "seen";

    static final class CountAndCopy implements Processor<Bytes, byte[], Bytes, byte[]> {
        private ProcessorContext<Bytes, byte[]> context;
        private KeyValueStore<Bytes, Long> seen;

        @Override
        public void init(ProcessorContext<Bytes, byte[]> context) {
            this.context = context;
            this.seen = context.getStateStore(STORE);
        }

        @Override
        public void process(Record<Bytes, byte[]> record) {
            Long before = seen.get(record.key());
            seen.put(record.key(), before == null ? 1L : before + 1);
            context.forward(record);
        }
    }

    static KafkaStreams hop(String bootstrap, String appId, String commitMs, String stateDir,
                            String input, String output) {
        StreamsBuilder builder = new StreamsBuilder();
        builder.addStateStore(Stores.keyValueStoreBuilder(
                Stores.inMemoryKeyValueStore(STORE), Serdes.Bytes(), Serdes.Long()));
        builder.stream(input, Consumed.with(Serdes.Bytes(), Serdes.ByteArray()))
                .process(CountAndCopy::new, STORE)
                .to(output, Produced.with(Serdes.Bytes(), Serdes.ByteArray()));
        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, commitMs);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
        props.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
        return new KafkaStreams(builder.build(), props);
    }

    public static void main(String[] args) throws InterruptedException {
        String bootstrap = args[0], prefix = args[1], commitMs = args[2], stateDir = args[3];
        List<KafkaStreams> apps = new ArrayList<>();
        for (int i = 4; i < args.length; i++) {
            String[] route = args[i].split(":");
            String appId = prefix + ".hop" + (i - 3);
            apps.add(hop(bootstrap, appId, commitMs, stateDir, route[0], route[1]));
        }
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            apps.forEach(KafkaStreams::close);
            stopped.countDown();
        }));
        apps.forEach(KafkaStreams::start);
        System.out.println("started " + apps.size() + " applications");
        stopped.await();
    }
}
