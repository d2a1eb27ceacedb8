"""Real servers for integration tests, started on loopback by the test harness.

Each class starts one server on 127.0.0.1 and ports the OS picked, in a temp folder
of its own, and ends it by its PID when the test is done; none of them is a mock.
What they run is installed and cached by `scripts/services.py` (docs/testing.md),
and installed on first use if the cache lacks it.

    KafkaBroker   Apache Kafka, one KRaft node (broker and controller)
    RedisServer   Debian's redis-server
    S3Server      S3Proxy, an S3-compatible server storing objects in a folder
    Telegraf      Telegraf consuming Kafka topics into a file
"""

from .kafka import KafkaBroker
from .process import ServiceError, ServiceProcess
from .redis import RedisServer
from .s3 import S3Server
from .telegraf import Telegraf

__all__ = [
    "KafkaBroker",
    "RedisServer",
    "S3Server",
    "ServiceError",
    "ServiceProcess",
    "Telegraf",
]
