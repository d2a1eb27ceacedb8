"""The Kafka worker: control commands in, Machine runs, status and trace events out."""
