-- Shared by every script of the Redis queue store (see redis/mod.rs for
-- the key layout). KEYS[1] is a queue's base key "weft:q:{<tag>}:<queue>";
-- every other key of that queue is the base plus a suffix, in the same
-- hash slot (never a key built any other way: that keeps every script
-- inside one Redis Cluster slot). ARGV[1] is the queue's name, ARGV[2] the caller's clock (Unix
-- ms), ARGV[3..17] the queue's settings.
local EPOCH = 1767225600000 -- 2026-01-01: ready scores are ms since then x 1024
local SCAN = 512            -- ready entries a consumer's filters may skip per level
local function num(s) return tonumber(s) or 0 end
local function fmt(n) return string.format('%.0f', n) end

local function settings(i)
  local function n(j) return tonumber(ARGV[i + j]) or 0 end
  return {
    prio = n(0) == 1, by_key = n(1) == 1, aging = n(2), max_msgs = n(3), max_bytes = n(4),
    drop_oldest = n(5) == 1, exp_dl = n(6) == 1, has_dl = n(7) == 1, max_deliv = n(8),
    bk = n(9), b_init = n(10), b_max = n(11), b_mult = n(12), ack = n(13), dedup = n(14),
  }
end

local function qname(b) return string.match(b, '^weft:q:{[^}]*}:(.*)$') end

-- {priority, payload bytes, type, key, source queue of a dead letter}
local function meta(b, id)
  local m = redis.call('HGET', b .. ':meta', id)
  if not m then return nil end
  return cmsgpack.unpack(m)
end

-- Into its level's ready set: after everything already there the first
-- time, back at that place when it is redelivered (FIFO survives retries).
local function make_ready(b, id, p, now)
  local pos = redis.call('HGET', b .. ':pos', id)
  if pos then
    redis.call('ZADD', b .. ':r' .. p, pos, id)
    return
  end
  local last = tonumber(redis.call('GET', b .. ':last') or '0')
  local s = math.max((now - EPOCH) * 1024, last + 1)
  redis.call('SET', b .. ':last', fmt(s))
  redis.call('HSET', b .. ':pos', id, fmt(s))
  redis.call('ZADD', b .. ':r' .. p, fmt(s), id)
end

-- Out of ready / waiting / in flight (the message itself stays).
local function unplace(b, id, m)
  redis.call('ZREM', b .. ':r' .. m[1], id)
  redis.call('ZREM', b .. ':wait', id)
  if redis.call('ZREM', b .. ':fly', id) == 1 then
    redis.call('HDEL', b .. ':own', id)
    if m[4] ~= '' then redis.call('SREM', b .. ':busy', m[4]) end
  end
end

-- Every trace of a message.
local function erase(b, id)
  local m = meta(b, id)
  if not m then return false end
  unplace(b, id, m)
  for _, h in ipairs({ ':msg', ':meta', ':cnt', ':err', ':leave', ':pos' }) do
    redis.call('HDEL', b .. h, id)
  end
  redis.call('ZREM', b .. ':all', id)
  redis.call('ZREM', b .. ':exp', id)
  redis.call('DECRBY', b .. ':bytes', m[2])
  return true
end

-- Every trace of messages acked in flight (erase for many at once: a few
-- multi-member commands whatever their number; at most a few hundred).
local function erase_acked(b, ids)
  if #ids == 0 then return end
  local metas = redis.call('HMGET', b .. ':meta', unpack(ids))
  local found, levels, keys, bytes = {}, {}, {}, 0
  for j, id in ipairs(ids) do
    if metas[j] then
      local m = cmsgpack.unpack(metas[j])
      found[#found + 1] = id
      levels[m[1]] = levels[m[1]] or {}
      table.insert(levels[m[1]], id)
      if m[4] ~= '' then keys[#keys + 1] = m[4] end
      bytes = bytes + m[2]
    end
  end
  if #found == 0 then return end
  for p, l in pairs(levels) do redis.call('ZREM', b .. ':r' .. p, unpack(l)) end
  for _, z in ipairs({ ':wait', ':fly', ':all', ':exp' }) do
    redis.call('ZREM', b .. z, unpack(found))
  end
  for _, h in ipairs({ ':own', ':msg', ':meta', ':cnt', ':err', ':leave', ':pos' }) do
    redis.call('HDEL', b .. h, unpack(found))
  end
  -- In flight, so each key is held by this message alone (key order).
  if #keys > 0 then redis.call('SREM', b .. ':busy', unpack(keys)) end
  redis.call('DECRBY', b .. ':bytes', bytes)
end

local function backoff(S, failed)
  if S.bk == 1 then return S.b_init end
  if S.bk == 2 then
    local d = S.b_init * (S.b_mult ^ (failed - 1))
    if d ~= d or d >= S.b_max then return S.b_max end
    return math.floor(d)
  end
  return 0
end

-- A message leaves (already unplaced): kept under :leave with its reason
-- for the store to move to the dead-letter queue, or erased.
local function leave(b, S, id, reason)
  if S.has_dl then
    redis.call('HSET', b .. ':leave', id, reason)
    return 'dead'
  end
  erase(b, id)
  return 'dropped'
end

-- A delivery failed: back after the backoff, or out when the consumer
-- rejected it or its deliveries are used up.
local function failed(b, S, id, now, requeue, err)
  local m = meta(b, id)
  if not m then return 'unknown' end
  unplace(b, id, m)
  redis.call('HSET', b .. ':err', id, err)
  local n = num(redis.call('HGET', b .. ':cnt', id))
  if (not requeue) or (S.max_deliv > 0 and n >= S.max_deliv) then
    local reason
    if requeue then
      reason = n .. ' deliveries failed; last error: ' .. err
    else
      reason = 'rejected by the consumer: ' .. err
    end
    return leave(b, S, id, reason)
  end
  local wait = backoff(S, n)
  if wait > 0 then
    redis.call('ZADD', b .. ':wait', fmt(now + wait), id)
    return 'waiting'
  end
  make_ready(b, id, m[1], now)
  return 'requeued'
end

-- Waiting messages whose time has come become ready.
local function due(b, now)
  local ids = redis.call('ZRANGEBYSCORE', b .. ':wait', '-inf', fmt(now), 'LIMIT', 0, 1000)
  for _, id in ipairs(ids) do
    redis.call('ZREM', b .. ':wait', id)
    local m = meta(b, id)
    if m then make_ready(b, id, m[1], now) end
  end
  return #ids
end

local function wake(b) redis.call('PUBLISH', 'weft:q:wake', qname(b)) end
