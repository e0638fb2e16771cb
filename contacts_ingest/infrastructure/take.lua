#!lua flags=allow-oom
-- Taking: the messages BLMOVE left in a consumer's inbox, and up to ARGV[2] more from
-- its queue (stopping once they add up to ARGV[3] bytes), each recorded as
-- unacknowledged (kombu's unacked hash and index, scored with the consumer's clock) in
-- the same step that takes it. A message that is not a kombu message (no delivery tag)
-- is returned unrecorded, and nothing is recorded for a consumer that acknowledges
-- nothing (a control client reading its replies), whose messages would otherwise stay.
-- Allowed while Redis is over maxmemory: a message only moves, from the queue to the
-- unacked record (a few dozen bytes more each, for the messages in hand, all freed by
-- their acknowledgement), so workers can drain a Redis that refuses admissions.
--
-- KEYS[1] the queue (list)   KEYS[2] the consumer's inbox (list)
-- KEYS[3] kombu's unacked hash   KEYS[4] kombu's unacked index (sorted set)
-- ARGV[1] now, in seconds (the consumer's clock, as kombu scores its index)
-- ARGV[2] the most messages to take from the queue   ARGV[3] the most bytes to take
-- ARGV[4] '1' to record the messages as unacknowledged, '0' not to
-- Returns the raw messages taken, oldest first.
local taken = {}
local record = ARGV[4] == '1'
local function take(raw)
  local ok, message = false, nil
  if record then ok, message = pcall(cjson.decode, raw) end
  local properties = ok and type(message) == 'table' and message.properties
  if type(properties) == 'table' and type(properties.delivery_tag) == 'string' then
    local info = type(properties.delivery_info) == 'table' and properties.delivery_info or {}
    local exchange = type(info.exchange) == 'string' and info.exchange or ''
    local routing_key = type(info.routing_key) == 'string' and info.routing_key or ''
    local tag = properties.delivery_tag
    redis.call('ZADD', KEYS[4], ARGV[1], tag)
    redis.call('HSET', KEYS[3], tag, '[' .. raw .. ',' .. cjson.encode(exchange) .. ','
                                     .. cjson.encode(routing_key) .. ']')
  end
  taken[#taken + 1] = raw
end
local bytes = 0
local raw = redis.call('RPOP', KEYS[2])
while raw do
  take(raw)
  bytes = bytes + #raw
  raw = redis.call('RPOP', KEYS[2])
end
for _ = 1, tonumber(ARGV[2]) do
  if bytes >= tonumber(ARGV[3]) then break end
  raw = redis.call('RPOP', KEYS[1])
  if not raw then break end
  take(raw)
  bytes = bytes + #raw
end
return taken
