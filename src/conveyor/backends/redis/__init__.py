"""The Redis backend: ``redis://host:port/db?prefix=conveyor`` (``rediss://`` for TLS).

Every role (queues, topics, states, history) lives in one Redis 6.2+ database. Each lease batch
and each commit batch is one Lua script call (``*.lua`` beside this module, loaded once with
``SCRIPT LOAD``, run by SHA with ``EVALSHA``, reloaded after ``NOSCRIPT``), so a commit's
settlement and effects apply atomically: all of a commit or none of it.

Key layout (``P`` is the prefix, ``?prefix=`` in the URL, default ``conveyor``; ``{queue}`` is a
Redis Cluster hash tag, so one queue's keys share a slot)::

    P:{queue}:jobs          sorted set: job id -> available_at, the jobs not leased (ready
                            and delayed) of priority 0
    P:{queue}:leased        sorted set: job id -> lease deadline, the leased jobs of priority
                            0. A lease moves a job here; lease() reads both sets by the same
                            rule (score <= now), so an expired lease is due again exactly like
                            a delayed job: available_at doubles as the lease deadline
    P:{queue}:jobs:<p>      the same two sets for the jobs of priority p ~= 0: one lane per
    P:{queue}:leased:<p>    priority in use, each read off its own index, highest first
    P:{queue}:control       hash, absent for nearly every queue: field <p> -> 1 per lane p ~= 0
                            in use (lease.lua forgets a lane it finds empty, commit.lua names it
                            again), field paused -> when the queue was paused. lease.lua reads
                            it once per queue: lane 0 alone and unpaused costs one empty read
    P:{queue}:dead          sorted set: dead letter id -> failed_at
    P:{queue}:counts        sorted set: minute (as text) -> minute, the minutes with settlements
    P:{queue}:counts:<m>    hash: c completed, r retried, d dead in minute m (commit.lua adds
                            one HINCRBY per queue and outcome per batch)
    P:{queue}:idem:<key>    string "<expires_at> <job id>" (expires_at "-" while the job exists;
                            after ACK/DEAD it is now + idempotency_retention, with a PX TTL as
                            garbage collection; a cancel deletes it)
    P:{queue}:notify        pub/sub channel: published when jobs become due, for wait_for_jobs
    P:job:<id>              hash: q queue, b body, e enqueued_at, k key, p priority (if not
                            0), s its own lease seconds (if set); from its first lease on also
                            a attempts, t token, w worker, l leased_at, x extensions; d lease
                            deadline while leased; le/lm/lt its last error (from a retry);
                            c 1 once its cancellation is requested
    P:dead:<id>             hash: the job's fields + f failed_at, et/em/tb the error
    P:dead                  sorted set: dead letter id -> failed_at, every queue
    P:token                 counter: fencing tokens (INCRBY once per lease batch)
    P:worked                set: the queues jobs were leased from (SADD once per lease batch),
                            which leases(None) and prune_counts() visit; prune_counts() drops a
                            queue with neither counts nor leases left
    P:paused                hash: paused queue -> when it was paused (the list; lease.lua reads
                            the queue's own P:{queue}:control)
    P:workers               hash: worker id -> its last heartbeat (a JSON array)
    P:events                set: event names with subscriptions
    P:sub:<event>           set: queues subscribed to the event
    P:state:<key>           hash: v value, n version
    P:history:<correlation> list: history entries as JSON arrays, in commit order
    P:history               sorted set: correlation id -> its first entry's time (for pruning)
    P:jobhistory:<id>       list: the correlation id of each history entry whose message id is
                            <id>, in commit order (job_history's index; pruned with the entries)
    P:corrupt:...           corrupt keys, moved aside for inspection (never read by conveyor):
                            job:<id>, history:<correlation>, history, dead, {<queue>}:dead,
                            jobhistory:<id>, {<queue>}:counts[:<m>]

A key of the wrong type under the prefix (something else wrote it) costs at most its own job:
``lease.lua`` skips a queue whose sets are corrupt and dead-letters a job whose hash is (or has
no body), a commit batch that needs a corrupt key writes nothing (see ``commit.lua``), naming the
key, and a corrupt history key or dead-letter index is moved aside and starts over.

Times are float seconds from the caller's clock, never Redis's: scores and script arguments
carry every digit of a double. Idempotency expiry is judged on the caller's clock too; the TTL
only collects garbage.

Redis Cluster is out of scope: job hashes are addressed by job id alone (a settlement names its
job, not its queue), a commit that touches several queues is one multi-key script, and P:token,
P:worked and P:paused are global keys beside the queue's own. The hash
tags make a later split possible; on one Redis (or a primary with replicas) everything works.

Durability: Redis acknowledges a commit once it is applied in memory. With ``appendonly yes``
and ``appendfsync everysec`` (the usual setting) a crash can lose about the last second (up to
two on a slow disk) of acknowledged enqueues, acks and state writes; ``appendfsync always``
loses none, at a large cost in throughput; with RDB snapshots only, a crash loses everything
since the last snapshot; without persistence, a restart loses everything. A lost ack means a job
runs again (at-least-once still holds); a lost enqueue is lost. Run Redis with
``maxmemory-policy noeviction``: an evicting Redis silently drops jobs.
"""

from conveyor.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend"]
