-- Reading and tidying one queue. ARGV[18]: op.
-- stats -> {ready per level 0..9, waiting, in flight, bytes, oldest
--   publish ms or -1, consumers of replicas seen in the last 5 s}
-- peek ARGV[19] limit, ARGV[20] source filter ('' none), ARGV[21] '1' to
--   leave out deliveries in flight -> {{id, stored, deliveries, error,
--   place}...} ready (delivery order), then waiting, then in flight
-- purge -> how many queued (ready or waiting) messages were removed, at
--   most 1000 per call
-- leaving -> up to 100 {id, reason, stored, deliveries, error} of
--   messages waiting to move to the dead-letter queue
-- gone ARGV[19..] ids -> erases those messages (not those in flight)
-- dedup ARGV[19] key, ARGV[20] id, ARGV[21] window ms -> the id already
--   published with the key inside the window, or nil (and the key taken)
-- consumers ARGV[19] replica, ARGV[20] its consumers -> recorded with
--   the time; returns the consumers of replicas seen in the last 5 s
local b = KEYS[1]
local now = num(ARGV[2])
local op = ARGV[18]

-- Consumers recorded by replicas seen in the last 5 s.
local function consumers()
  local all = redis.call('HGETALL', b .. ':cons')
  local total = 0
  for i = 1, #all, 2 do
    local c, seen = string.match(all[i + 1], '^(%d+):(%d+)$')
    if c and num(seen) >= now - 5000 then total = total + num(c) end
  end
  return total
end

if op == 'stats' then
  local out = {}
  for p = 0, 9 do out[#out + 1] = redis.call('ZCARD', b .. ':r' .. p) end
  out[#out + 1] = redis.call('ZCARD', b .. ':wait')
  out[#out + 1] = redis.call('ZCARD', b .. ':fly')
  out[#out + 1] = num(redis.call('GET', b .. ':bytes'))
  local first = redis.call('ZRANGE', b .. ':all', 0, 0, 'WITHSCORES')
  if #first > 0 then out[#out + 1] = tonumber(first[2]) else out[#out + 1] = -1 end
  out[#out + 1] = consumers()
  return out
elseif op == 'peek' then
  local limit, src, queued_only = num(ARGV[19]), ARGV[20], ARGV[21] == '1'
  local out, scanned = {}, 0
  local function add(id, place)
    scanned = scanned + 1
    local m = meta(b, id)
    if m and (src == '' or m[5] == src) then
      out[#out + 1] = { id, redis.call('HGET', b .. ':msg', id), num(redis.call('HGET', b .. ':cnt', id)),
        redis.call('HGET', b .. ':err', id) or '', place }
    end
    return #out >= limit or scanned >= 100000
  end
  local sets = {}
  for p = 9, 0, -1 do sets[#sets + 1] = { ':r' .. p, 'ready' } end
  sets[#sets + 1] = { ':wait', 'waiting' }
  if not queued_only then sets[#sets + 1] = { ':fly', 'in-flight' } end
  for _, s in ipairs(sets) do
    local off = 0
    while true do
      local ids = redis.call('ZRANGE', b .. s[1], off, off + 255)
      if #ids == 0 then break end
      for _, id in ipairs(ids) do
        if add(id, s[2]) then return out end
      end
      off = off + 256
    end
  end
  return out
elseif op == 'purge' then
  local n = 0
  for _, k in ipairs({ ':r0', ':r1', ':r2', ':r3', ':r4', ':r5', ':r6', ':r7', ':r8', ':r9', ':wait' }) do
    local ids = redis.call('ZRANGE', b .. k, 0, 999 - n)
    for _, id in ipairs(ids) do
      if erase(b, id) then n = n + 1 end
    end
    if n >= 1000 then break end
  end
  return n
elseif op == 'leaving' then
  local scan = redis.call('HSCAN', b .. ':leave', 0, 'COUNT', 100)
  local out = {}
  local kv = scan[2]
  for i = 1, #kv, 2 do
    local id = kv[i]
    out[#out + 1] = { id, kv[i + 1], redis.call('HGET', b .. ':msg', id) or '',
      num(redis.call('HGET', b .. ':cnt', id)), redis.call('HGET', b .. ':err', id) or '' }
    if #out >= 100 then break end
  end
  return out
elseif op == 'gone' then
  local n = 0
  for i = 19, #ARGV do
    if not redis.call('ZSCORE', b .. ':fly', ARGV[i]) and erase(b, ARGV[i]) then n = n + 1 end
  end
  return n
elseif op == 'dedup' then
  local k = b .. ':dd:' .. ARGV[19]
  local had = redis.call('GET', k)
  if had then return had end
  redis.call('SET', k, ARGV[20], 'PX', ARGV[21])
  return false
elseif op == 'consumers' then
  redis.call('HSET', b .. ':cons', ARGV[19], ARGV[20] .. ':' .. fmt(now))
  return consumers()
end
return redis.error_reply('unknown op ' .. tostring(op))
