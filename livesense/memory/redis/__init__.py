"""The parts of RedisStore (memory.redis_store), one job each: the connection and its event
loop (link), pipelined reads (pipelined), leases and fencing (leases), the write buffer and its
flusher (writer), gap markers (gaps), following other processes' changes (follower), the query
engine's vector index (vectors) and reads of stored moments (reads). The facade wires them;
they never import it."""
