// Reads clstream's Strimzi manifests into Strimzi's own model classes (io.strimzi:api), refusing
// unknown fields, and checks the durability settings exactly-once relies on.
// tests/integration/test_deploy_manifests.py runs it with Java's source launcher:
//
//   java -cp "$(cat classpath.txt)" StrimziCheck.java ../../../deploy/strimzi/*.yaml
//
// It prints one line per resource and exits 1 naming every problem found.

import com.fasterxml.jackson.core.StreamReadFeature;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.introspect.Annotated;
import com.fasterxml.jackson.databind.introspect.JacksonAnnotationIntrospector;
import com.fasterxml.jackson.dataformat.yaml.YAMLFactory;
import com.fasterxml.jackson.dataformat.yaml.YAMLMapper;
import io.strimzi.api.kafka.model.kafka.Kafka;
import io.strimzi.api.kafka.model.kafka.KafkaAuthorizationSimple;
import io.strimzi.api.kafka.model.kafka.listener.GenericKafkaListener;
import io.strimzi.api.kafka.model.kafka.listener.KafkaListenerAuthenticationScramSha512;
import io.strimzi.api.kafka.model.nodepool.KafkaNodePool;
import io.strimzi.api.kafka.model.nodepool.ProcessRoles;
import io.strimzi.api.kafka.model.topic.KafkaTopic;
import io.strimzi.api.kafka.model.user.KafkaUser;
import io.strimzi.api.kafka.model.user.KafkaUserAuthorizationSimple;
import io.strimzi.api.kafka.model.user.KafkaUserScramSha512ClientAuthentication;
import java.io.File;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;

public class StrimziCheck {
    static final Map<String, Class<?>> KINDS = Map.of(
            "Kafka", Kafka.class,
            "KafkaNodePool", KafkaNodePool.class,
            "KafkaTopic", KafkaTopic.class,
            "KafkaUser", KafkaUser.class);

    static final List<String> problems = new ArrayList<>();

    public static void main(String[] args) throws Exception {
        if (args.length == 0) {
            System.err.println("usage: java -cp CLASSPATH StrimziCheck.java MANIFEST.yaml...");
            System.exit(2);
        }
        ObjectMapper mapper = strictMapper();
        for (String path : args) {
            List<JsonNode> documents = mapper.readValues(
                    mapper.getFactory().createParser(new File(path)), JsonNode.class).readAll();
            for (JsonNode document : documents) {
                if (document == null || document.isNull() || document.isEmpty()) {
                    continue; // an empty document between two `---`
                }
                check(mapper, path, document);
            }
        }
        if (!problems.isEmpty()) {
            System.err.println(String.join("\n", problems));
            System.exit(1);
        }
    }

    /**
     * Strimzi's classes (and fabric8's, for pod templates and metadata) keep unknown fields in an
     * additionalProperties map through a JSON any-setter, so a misspelt field would be accepted and
     * ignored. Without any-setters Jackson reports every unknown field instead.
     */
    static ObjectMapper strictMapper() {
        ObjectMapper mapper = new YAMLMapper(YAMLFactory.builder()
                .enable(StreamReadFeature.STRICT_DUPLICATE_DETECTION)
                .build());
        mapper.setAnnotationIntrospector(new JacksonAnnotationIntrospector() {
            @Override
            public Boolean hasAnySetter(Annotated annotated) {
                return Boolean.FALSE;
            }
        });
        mapper.enable(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES);
        mapper.enable(DeserializationFeature.FAIL_ON_NULL_FOR_PRIMITIVES);
        return mapper;
    }

    static void check(ObjectMapper mapper, String path, JsonNode document) throws Exception {
        String kind = document.path("kind").asText();
        String name = document.path("metadata").path("name").asText();
        String where = path + ": " + kind + " " + name;
        Class<?> type = KINDS.get(kind);
        if (type == null) {
            problems.add(where + ": kind is none of " + KINDS.keySet());
            return;
        }
        // The versions this release of the API serves, from the model class itself.
        @SuppressWarnings("unchecked")
        List<String> versions = (List<String>) type.getField("VERSIONS").get(null);
        String group = (String) type.getField("RESOURCE_GROUP").get(null);
        String apiVersion = document.path("apiVersion").asText();
        if (!versions.stream().map(v -> group + "/" + v).toList().contains(apiVersion)) {
            problems.add(where + ": apiVersion " + apiVersion + " is not one of " + group + "/" + versions);
        }
        Object resource;
        try {
            resource = mapper.treeToValue(document, type);
        } catch (Exception e) {
            problems.add(where + ": " + e.getMessage().lines().findFirst().orElse(""));
            return;
        }
        int before = problems.size();
        if (resource instanceof Kafka kafka) {
            checkKafka(where, kafka);
        } else if (resource instanceof KafkaNodePool pool) {
            checkPool(where, pool);
        } else if (resource instanceof KafkaTopic topic) {
            checkTopic(where, topic);
        } else if (resource instanceof KafkaUser user) {
            checkUser(where, user);
        }
        if (problems.size() == before) {
            System.out.println("ok " + where);
        }
    }

    static void checkKafka(String where, Kafka kafka) {
        Map<String, Object> config = kafka.getSpec().getKafka().getConfig();
        // Three copies, two of them in sync before a write counts: one broker may be lost or
        // restarted without losing an acknowledged record or refusing writes. The offsets and
        // transaction state topics hold commits and exactly-once transactions: the same rule.
        expect(where, config, "default.replication.factor", 3);
        expect(where, config, "min.insync.replicas", 2);
        expect(where, config, "offsets.topic.replication.factor", 3);
        expect(where, config, "transaction.state.log.replication.factor", 3);
        expect(where, config, "transaction.state.log.min.isr", 2);
        List<GenericKafkaListener> listeners = kafka.getSpec().getKafka().getListeners();
        if (listeners.stream().noneMatch(l -> l.getAuth() instanceof KafkaListenerAuthenticationScramSha512)) {
            problems.add(where + ": no listener authenticates with scram-sha-512");
        }
        if (!(kafka.getSpec().getKafka().getAuthorization() instanceof KafkaAuthorizationSimple)) {
            problems.add(where + ": authorization must be simple, or the KafkaUsers' ACLs are not enforced");
        }
        if (kafka.getSpec().getEntityOperator() == null
                || kafka.getSpec().getEntityOperator().getTopicOperator() == null
                || kafka.getSpec().getEntityOperator().getUserOperator() == null) {
            problems.add(where + ": the topic and user operators must run for topics.yaml and user.yaml");
        }
    }

    static void checkPool(String where, KafkaNodePool pool) {
        clusterLabel(where, pool.getMetadata().getLabels());
        if (pool.getSpec().getReplicas() != 3) {
            problems.add(where + ": replicas " + pool.getSpec().getReplicas() + ", want 3");
        }
        if (!Set.copyOf(pool.getSpec().getRoles()).equals(Set.of(ProcessRoles.CONTROLLER, ProcessRoles.BROKER))) {
            problems.add(where + ": roles " + pool.getSpec().getRoles() + ", want controller and broker");
        }
    }

    static void checkTopic(String where, KafkaTopic topic) {
        clusterLabel(where, topic.getMetadata().getLabels());
        if (topic.getSpec().getReplicas() == null || topic.getSpec().getReplicas() != 3) {
            problems.add(where + ": replicas " + topic.getSpec().getReplicas() + ", want 3");
        }
        if (topic.getSpec().getPartitions() == null || topic.getSpec().getPartitions() < 1) {
            problems.add(where + ": set partitions (one actor reads at least one partition)");
        }
        expect(where, topic.getSpec().getConfig(), "min.insync.replicas", 2);
    }

    static void checkUser(String where, KafkaUser user) {
        clusterLabel(where, user.getMetadata().getLabels());
        if (!(user.getSpec().getAuthentication() instanceof KafkaUserScramSha512ClientAuthentication)) {
            problems.add(where + ": authentication must be scram-sha-512");
        }
        if (!(user.getSpec().getAuthorization() instanceof KafkaUserAuthorizationSimple simple)
                || simple.getAcls() == null || simple.getAcls().isEmpty()) {
            problems.add(where + ": authorization must be simple, with ACLs");
        }
    }

    static void clusterLabel(String where, Map<String, String> labels) {
        if (labels == null || !labels.containsKey("strimzi.io/cluster")) {
            problems.add(where + ": no strimzi.io/cluster label, so no operator picks it up");
        }
    }

    static void expect(String where, Map<String, Object> config, String key, int value) {
        Object found = config == null ? null : config.get(key);
        if (found == null || !String.valueOf(found).equals(String.valueOf(value))) {
            problems.add(where + ": config " + key + " is " + found + ", want " + value);
        }
    }
}
