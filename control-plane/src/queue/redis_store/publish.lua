-- Admits messages into every target queue (KEYS: one base per target; a
-- pubsub topic's subscriptions share one hash tag) with the ids the caller
-- allocated: all targets or none. ARGV[18]: message count; then per
-- message: id, priority, payload bytes, type, key, deliver_at, expires,
-- marker, source, and one stored form per target. A marker makes a move
-- (dead letter, redrive) idempotent: a second publish with it is
-- answered as deduplicated. Returns {{code, id or reason}...}, dropped:
-- code 0 enqueued, 1 deduplicated, 2 refused.
local now = num(ARGV[2])
local S = settings(3)
local nt = #KEYS
local first = KEYS[1]
local res = {}
local woke = {}
local dropped = 0
local i = 19

local function over(b, size)
  local count = redis.call('ZCARD', b .. ':all') + 1
  local bytes = num(redis.call('GET', b .. ':bytes')) + size
  return (S.max_msgs > 0 and count > S.max_msgs) or (S.max_bytes > 0 and bytes > S.max_bytes)
end

local function full(b)
  local why = 'queue full: ' .. redis.call('ZCARD', b .. ':all') .. ' messages, '
    .. num(redis.call('GET', b .. ':bytes')) .. ' bytes (maxSize ' .. S.max_msgs .. ' messages, '
    .. S.max_bytes .. ' bytes)'
  if nt > 1 then why = 'subscription ' .. string.match(qname(b), '[^/]*$') .. ': ' .. why end
  return why
end

-- Drops the oldest queued (not in flight, not leaving) message.
local function drop_oldest(b)
  local ids = redis.call('ZRANGE', b .. ':all', 0, 63)
  for _, id in ipairs(ids) do
    if not redis.call('ZSCORE', b .. ':fly', id) and redis.call('HEXISTS', b .. ':leave', id) == 0 then
      erase(b, id)
      dropped = dropped + 1
      return true
    end
  end
  return false
end

for _ = 1, num(ARGV[18]) do
  local id, p, size, kind, key = ARGV[i], num(ARGV[i + 1]), num(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4]
  local deliver_at, expires, marker, src = num(ARGV[i + 5]), num(ARGV[i + 6]), ARGV[i + 7], ARGV[i + 8]
  local blobs = i + 9
  i = i + 9 + nt
  local verdict = nil
  if marker ~= '' then
    local had = redis.call('GET', first .. ':mk:' .. marker)
    if had then verdict = { 1, had } end
  end
  if not verdict and S.dedup > 0 and key ~= '' then
    local had = redis.call('GET', first .. ':dd:' .. key)
    if had then verdict = { 1, had } end
  end
  if not verdict and not S.drop_oldest then
    for t = 1, nt do
      if over(KEYS[t], size) then
        verdict = { 2, full(KEYS[t]) }
        break
      end
    end
  end
  if not verdict and S.drop_oldest then
    for t = 1, nt do
      while over(KEYS[t], size) do
        if not drop_oldest(KEYS[t]) then
          verdict = { 2, full(KEYS[t]) }
          break
        end
      end
      if verdict then break end
    end
  end
  if not verdict then
    for t = 1, nt do
      local b = KEYS[t]
      redis.call('HSET', b .. ':msg', id, ARGV[blobs + t - 1])
      redis.call('HSET', b .. ':meta', id, cmsgpack.pack({ p, size, kind, key, src }))
      redis.call('ZADD', b .. ':all', fmt(now), id)
      redis.call('INCRBY', b .. ':bytes', size)
      if expires > 0 then redis.call('ZADD', b .. ':exp', fmt(expires), id) end
      if deliver_at > now then
        redis.call('ZADD', b .. ':wait', fmt(deliver_at), id)
      else
        make_ready(b, id, p, now)
        woke[t] = true
      end
    end
    if S.dedup > 0 and key ~= '' then
      redis.call('SET', first .. ':dd:' .. key, id, 'PX', S.dedup)
    end
    if marker ~= '' then
      redis.call('SET', first .. ':mk:' .. marker, id, 'PX', 604800000)
    end
    verdict = { 0, id }
  end
  res[#res + 1] = verdict
end
for t = 1, nt do
  if woke[t] then wake(KEYS[t]) end
end
return { res, dropped }
