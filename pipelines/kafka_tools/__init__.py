"""Kafka-side tools shared by the control plane, the commands, the benchmark and the soak: the admin
client (topics, group lag), the local broker, reading and writing topics, the accounting behind
``clstream verify`` and the dead-letter replay."""
