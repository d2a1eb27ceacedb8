"""The test services work over real connections: one smoke test per server, and restarts.

These prove the harness itself (tests/services): that each fixture's server is real,
reachable with the project's own client libraries, and survives what the worker's
tests will do to it (restarts mid-run, a crash).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import boto3
import httpx
import pytest
import redis
from botocore.exceptions import ClientError
from confluent_kafka import Consumer, Message, Producer
from services import KafkaBroker, RedisServer, S3Server, Telegraf

TelegrafFactory = Callable[..., Telegraf]


def _topic(kafka: KafkaBroker, partitions: int = 1) -> str:
    name = f"test-{uuid.uuid4().hex[:10]}"
    kafka.create_topic(name, partitions=partitions)
    return name


def _produce(producer: Producer, topic: str, *values: bytes, key: bytes | None = None) -> None:
    errors: list[str] = []

    def delivered(error: object, _message: Message) -> None:
        if error is not None:
            errors.append(str(error))

    for value in values:
        producer.produce(topic, value, key=key, on_delivery=delivered)
    assert producer.flush(30) == 0, "messages still undelivered after 30s"
    assert errors == []


def _consume(kafka: KafkaBroker, topic: str, count: int, timeout: float = 30.0) -> list[Message]:
    consumer = Consumer(kafka.client_config(
        group_id=f"g-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest",
        enable_auto_commit=False))
    consumer.subscribe([topic])
    try:
        messages: list[Message] = []
        for _ in range(int(timeout)):
            if len(messages) >= count:
                break
            message = consumer.poll(1.0)
            if message is not None:
                assert message.error() is None, message.error()
                messages.append(message)
        return messages
    finally:
        consumer.close()


# -- Kafka -----------------------------------------------------------------------------


def test_kafka_carries_a_message_from_producer_to_consumer(kafka: KafkaBroker) -> None:
    topic = _topic(kafka)
    _produce(Producer(kafka.client_config()), topic, b"\x00start\xff", key=b"exec-1")

    [message] = _consume(kafka, topic, 1)

    assert (message.key(), message.value()) == (b"exec-1", b"\x00start\xff")


def test_kafka_topics_are_not_created_by_use(kafka: KafkaBroker) -> None:
    metadata = kafka.admin().list_topics(timeout=10)
    producer = Producer(kafka.client_config(message_timeout_ms=2000))
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    producer.produce(missing, b"x")
    producer.flush(5)

    assert missing not in metadata.topics
    assert missing not in kafka.admin().list_topics(timeout=10).topics


@pytest.mark.parametrize("hard", [False, True], ids=["stop", "kill"])
def test_kafka_restart_keeps_ports_log_and_clients(kafka: KafkaBroker, hard: bool) -> None:
    topic = _topic(kafka)
    producer = Producer(kafka.client_config())
    _produce(producer, topic, b"before")
    address, pid = kafka.bootstrap_servers, kafka.pid

    try:
        kafka.restart(hard=hard)
    finally:
        if not kafka.running:
            kafka.start()
    _produce(producer, topic, b"after")  # the producer made before the restart reconnects

    assert kafka.bootstrap_servers == address
    assert kafka.pid != pid
    assert [m.value() for m in _consume(kafka, topic, 2)] == [b"before", b"after"]


# -- Redis -----------------------------------------------------------------------------


def test_redis_sets_and_gets(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.set("greeting", "héllo".encode(), px=60_000)

    assert client.get("greeting") == "héllo".encode()
    assert 0 < client.pttl("greeting") <= 60_000


def test_redis_restart_keeps_the_port_and_loses_the_data(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.set("lease:exec-1", "worker-a")
    url, pid = redis_server.url, redis_server.pid

    try:
        redis_server.restart()
    finally:
        if not redis_server.running:
            redis_server.start()

    assert (redis_server.url, redis_server.pid != pid) == (url, True)
    assert redis.Redis.from_url(url).ping()
    assert client.get("lease:exec-1") is None  # the old client reconnects; the data is gone


def test_a_durable_redis_keeps_its_data_across_a_crash() -> None:
    with RedisServer(durable=True) as server:
        server.client().set("fencing-token", 7)
        server.restart(hard=True)

        assert server.client().get("fencing-token") == b"7"


# -- S3 --------------------------------------------------------------------------------


def test_s3_stores_objects_and_serves_presigned_urls(s3: S3Server) -> None:
    client = s3.client()
    body = bytes(range(256)) * 64
    key = "artifacts/exec-1/große Datei.bin"
    client.put_object(Bucket=s3.bucket, Key=key, Body=body, ContentType="application/x-test")

    fetched = client.get_object(Bucket=s3.bucket, Key=key)
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": s3.bucket, "Key": key}, ExpiresIn=300)
    response = httpx.get(url, timeout=10)

    assert fetched["Body"].read() == body
    assert fetched["ContentType"] == "application/x-test"
    assert url.startswith(s3.endpoint_url) and "X-Amz-Signature=" in url
    assert (response.status_code, response.content) == (200, body)


def test_s3_refuses_a_wrong_secret_and_a_tampered_url(s3: S3Server) -> None:
    client = s3.client()
    client.put_object(Bucket=s3.bucket, Key="secret.txt", Body=b"s")
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": s3.bucket, "Key": "secret.txt"}, ExpiresIn=300)
    impostor = boto3.client(
        "s3", endpoint_url=s3.endpoint_url, region_name=s3.region,
        aws_access_key_id=s3.access_key, aws_secret_access_key="not-the-secret")

    with pytest.raises(ClientError) as refused:
        impostor.get_object(Bucket=s3.bucket, Key="secret.txt")
    tampered = httpx.get(url.replace("secret.txt", "secret.txt2"), timeout=10)

    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert tampered.status_code == 403


# -- Telegraf --------------------------------------------------------------------------

# A value with everything a trace event's repr may hold: quotes, backslashes (one before
# an `n`, which must not turn into a newline), a newline, and text beyond ASCII.
AWKWARD = 'say "hi" to C:\\new\\dir\nsecond line: héllo ✓ 日本語'


def _line_protocol_string(text: str) -> str:
    """A string field value as line protocol carries it, quotes included."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def test_telegraf_reads_line_protocol_from_kafka_with_fields_intact(
    kafka: KafkaBroker, telegraf_factory: TelegrafFactory
) -> None:
    topic = _topic(kafka)
    first = (f"spy_trace,execution_id=exec-1,kind=expr seq=1i,line=3i,"
             f"value={_line_protocol_string(AWKWARD)},type=\"str\" 1700000000000000001")
    second = ("spy_trace,execution_id=exec-1,kind=stmt seq=2i,line=4i,value=\"ok\" "
              "1700000000000000002\n"
              "spy_trace,execution_id=exec-1,kind=call seq=3i,duration_ms=1.5,ok=true "
              "1700000000000000003\n")
    _produce(Producer(kafka.client_config()), topic, first.encode(), second.encode(),
             key=b"exec-1")

    agent = telegraf_factory(topic, output_format="json")
    metrics = sorted(agent.wait_for_metrics(3), key=lambda m: m["fields"]["seq"])

    assert [m["name"] for m in metrics] == ["spy_trace"] * 3
    assert [m["tags"] for m in metrics] == [
        {"execution_id": "exec-1", "kind": "expr"},
        {"execution_id": "exec-1", "kind": "stmt"},
        {"execution_id": "exec-1", "kind": "call"},
    ]
    assert [m["timestamp"] for m in metrics] == [1700000000000000001 + i for i in range(3)]
    assert metrics[0]["fields"] == {"seq": 1, "line": 3, "value": AWKWARD, "type": "str"}
    assert metrics[1]["fields"] == {"seq": 2, "line": 4, "value": "ok"}
    assert metrics[2]["fields"] == {"seq": 3, "duration_ms": 1.5, "ok": True}


def test_telegraf_writes_line_protocol_back_out(
    kafka: KafkaBroker, telegraf_factory: TelegrafFactory
) -> None:
    topic = _topic(kafka)
    line = (f"spy_trace,kind=expr seq=7i,value={_line_protocol_string(AWKWARD)} "
            "1700000000000000007")
    _produce(Producer(kafka.client_config()), topic, line.encode())

    agent = telegraf_factory(topic, output_format="influx")

    # Telegraf 1.37 escapes only quotes and backslashes in string fields on the way out:
    # the newline is written raw, inside the quotes, so this metric spans two lines.
    as_telegraf_writes_it = AWKWARD.replace("\\", "\\\\").replace('"', '\\"')
    assert "\n".join(agent.wait_for_lines(2)) == (
        f'spy_trace,kind=expr seq=7i,value="{as_telegraf_writes_it}" 1700000000000000007')
