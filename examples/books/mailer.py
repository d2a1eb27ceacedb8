"""Example mailer Book: records the messages it was asked to send."""

SENT: list[dict[str, object]] = []


def send(to, subject, body):
    if "@" not in to:
        raise ValueError(f"not an e-mail address: {to!r}")
    message = {"id": f"M-{len(SENT) + 1}", "to": to, "subject": subject}
    SENT.append(message)
    return message
