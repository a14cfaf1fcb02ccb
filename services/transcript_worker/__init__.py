"""transcript_worker: everything durable and everything that happens after a chat.

One module per queue (consumers: thin, AMQP-facing):
    archive.py      transcript_worker.archive      → MySQL, batched (archive_store, batching)
    closer.py       transcript_worker.closer       → Closer (closing), plus the idle sweep
    transcripts.py  transcript_worker.transcripts  → TranscriptBuilder → habla.transcripts
    email.py        transcript_worker.email        → rendering (Jinja2) → Mailer (aiosmtplib)

Domain modules know nothing of AMQP: archive_store, conversation_store (MySQL),
batching, closing, lease (Redis), transcript_builder, rendering, mailer.
app.py builds the dependencies once and runs the consumers; __main__.py starts it.
"""
