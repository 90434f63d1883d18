"""The NATS JetStream backend: ``nats://host:port?prefix=conveyor`` (nats-server 2.9+ with JetStream).

JetStream has no multi-message transaction, and a conveyor commit (a settlement plus its effects)
must be atomic, fenced and exactly-once. So the stream is not a queue here but a replicated,
ordered commit log, and the state (jobs, leases, dead letters, states, history, counts, workers)
is the in-memory backend's state machine (:class:`~conveyor.backends.memory.MemoryBackend`), kept
by every backend instance as a replica applied from that log:

* every mutating port call (a commit batch, a lease, an extend, a redrive, a pause...) is ONE
  record, published with a ``Nats-Msg-Id`` unique to the instance and the call, so a publish
  retried after a lost acknowledgement is stored once (within the stream's duplicate window);
* every instance consumes the stream in order (an ordered push consumer) and applies each record
  to its replica; the result of a call is what applying its record at its position gave, the same
  in every replica. Two workers racing for one job: the first lease record in the stream takes it,
  the later one finds it leased, in every replica alike. A stale lease's commit is rejected at its
  position, and none of its effects is applied anywhere;
* a read catches up with the stream's last sequence first (one round trip), then reads the
  replica: it sees every write acknowledged before it began, from any instance.

Layout (``P`` is the prefix): stream ``CONVEYOR_P`` (file storage, limits retention, discard new),
subject ``conveyor.P.log``. Records are described in :mod:`~conveyor.backends.nats.records`.

What an operator configures (URL query options, used when an instance creates the stream):
``replicas`` (1; 3 on a cluster, so an acknowledged record survives the loss of a server),
``duplicate_window`` (120 s) and ``publish_timeout`` (30 s, shorter than the window), ``max_bytes``.
Never give the stream a ``max_age`` or a ``max_msgs``: the log is the state, and a record dropped
by a limit is a write lost. See docs/guide.md ("NATS JetStream") for the guarantees.
"""

from conveyor.backends.nats.backend import NatsBackend

__all__ = ["NatsBackend"]
