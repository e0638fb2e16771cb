#!lua flags=allow-oom
-- A dead consumer's inbox goes back onto its queue, oldest first to the consuming end,
-- and the inbox is forgotten. Messages only move, so it is allowed while Redis is over
-- maxmemory.
--
-- KEYS[1] the inbox (list)   KEYS[2] its queue (list)   KEYS[3] the set of inboxes
-- ARGV[1] the inbox's entry in that set
-- Returns the number of messages moved.
local moved = 0
local raw = redis.call('RPOP', KEYS[1])
while raw do
  redis.call('RPUSH', KEYS[2], raw)
  moved = moved + 1
  raw = redis.call('RPOP', KEYS[1])
end
redis.call('SREM', KEYS[3], ARGV[1])
return moved
