#!lua flags=allow-oom
-- Acknowledging: each message's unacked record (kombu's hash and index) is removed, all
-- in one atomic step (kombu does it in a MULTI transaction, which Redis refuses whole
-- while over maxmemory, even though it only frees memory).
--
-- KEYS[1] kombu's unacked hash   KEYS[2] kombu's unacked index (sorted set)
-- ARGV the delivery tags
-- Returns the number of records removed.
local removed = 0
for _, tag in ipairs(ARGV) do
  redis.call('ZREM', KEYS[2], tag)
  removed = removed + redis.call('HDEL', KEYS[1], tag)
end
return removed
