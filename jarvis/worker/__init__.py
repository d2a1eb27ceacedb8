"""The Kafka worker: control commands in, Machine runs, status and trace events out.

    loop.py      the consumer loop: dispatch, offsets, pausing, rebalances, shutdown
    runs.py      one execution: lease, fence, Execution in a child process, status events
    leases.py    Redis leases with fencing tokens, and the fence file that guards writes
    endings.py   how executions ended (Redis and the state directory): duplicates
    stops.py     stop requests for runs on other workers
    retry.py     which failures are waited out, and the backoff between tries
    offsets.py   which offsets may be committed
    logs.py      trace events to spy_logs in line protocol, with backpressure
    metrics.py   worker metrics to spy_metrics in line protocol
    health.py    the heartbeat file that `jarvis health` reads
    messages.py  the messages on Kafka, defined once
    programs.py  where a start's program comes from (inline or object store)
    artifacts.py the object stores (S3, local)
"""
