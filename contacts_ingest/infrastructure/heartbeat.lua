#!lua flags=allow-oom
-- A consumer tells the others it is alive, and where its inbox is. Allowed while Redis
-- is over maxmemory (one key and one set member per consumer), so a consumer draining
-- such a Redis does not look dead and have its inbox taken back.
--
-- KEYS[1] the consumer's alive key   KEYS[2] the set of inboxes
-- ARGV[1] seconds the alive key lives   ARGV[2] the inbox's entry (queue, separator, id)
-- Returns 1.
redis.call('SET', KEYS[1], '1', 'EX', tonumber(ARGV[1]))
redis.call('SADD', KEYS[2], ARGV[2])
return 1
