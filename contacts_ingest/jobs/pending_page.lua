-- A page of one user's pending jobs (queued or processing), newest first, ties by job
-- id in byte order: what a listing shows of the jobs no worker has finished yet.
-- Reads at most ARGV[7] entries of the user's index; an entry whose record has expired
-- is dropped from it.
-- KEYS[1] the user's index of pending jobs (sorted set: job id -> acceptance time, us)
-- ARGV[1] the key prefix (records are <prefix>job:<id>)
-- ARGV[2] the newest acceptance time to list ('+inf' for no bound)
-- ARGV[3] '' or a job id: then only jobs strictly older than (ARGV[2], ARGV[3])
-- ARGV[4] the oldest acceptance time to list ('-inf' for no bound)
-- ARGV[5] the status wanted ('' for either)   ARGV[6] most jobs   ARGV[7] most entries
-- Returns {frontier time, frontier id, then four items per job: id, status, operation,
-- acceptance time}; the frontier is the last entry read, or '' and '' when the index
-- was read to its end.
local wanted, budget = tonumber(ARGV[6]), tonumber(ARGV[7])
local top = ARGV[2] == '+inf' and math.huge or tonumber(ARGV[2])
local jobs, read, offset = {}, 0, 0
local last_time, last_id = '', ''
local finished = false
while #jobs < 4 * wanted and read < budget do
  local count = math.min(100, budget - read)
  local chunk = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[2], ARGV[4], 'WITHSCORES',
                           'LIMIT', offset, count)
  offset = offset + #chunk / 2
  for i = 1, #chunk, 2 do
    local job, time = chunk[i], tonumber(chunk[i + 1])
    read = read + 1
    last_time, last_id = string.format('%.0f', time), job
    if ARGV[3] == '' or time < top or job < ARGV[3] then
      local record = redis.call('HMGET', ARGV[1] .. 'job:' .. job, 'status', 'operation')
      if not record[1] then
        redis.call('ZREM', KEYS[1], job)
        offset = offset - 1
      elseif ARGV[5] == '' or record[1] == ARGV[5] then
        for _, item in ipairs({job, record[1], record[2], last_time}) do
          table.insert(jobs, item)
        end
        if #jobs == 4 * wanted then break end
      end
    end
  end
  if #chunk < 2 * count and #jobs < 4 * wanted then
    finished = true
    break
  end
end
if finished then last_time, last_id = '', '' end
local answer = {last_time, last_id}
for _, item in ipairs(jobs) do table.insert(answer, item) end
return answer
