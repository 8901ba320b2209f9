-- What a consumer says about its deliveries. ARGV[18]: op (ack, nack,
-- extend, release), ARGV[19]: consumer. ack: ids in ARGV[20..] -> a code
-- per id (0 done, 1 not in flight, 2 another consumer's). nack: id,
-- requeue (1/0), error -> code or the effect. extend: id, ms -> code or
-- the new deadline (as {0, deadline}). release: every delivery of the
-- consumer comes back -> how many went to the dead-letter queue. reclaim:
-- release for every consumer whose name starts with ARGV[19] (a
-- restarted replica's earlier consumers).
local b = KEYS[1]
local now = num(ARGV[2])
local S = settings(3)
local op, consumer = ARGV[18], ARGV[19]

local function owned(id)
  local o = redis.call('HGET', b .. ':own', id)
  if not o then return 1 end
  if o ~= consumer then return 2 end
  return 0
end

if op == 'ack' then
  local res, done, seen = {}, {}, {}
  for i = 20, #ARGV do
    local c = 1
    if not seen[ARGV[i]] then c = owned(ARGV[i]) end
    if c == 0 then
      seen[ARGV[i]] = true
      done[#done + 1] = ARGV[i]
    end
    res[#res + 1] = c
  end
  for from = 1, #done, 500 do
    erase_acked(b, { unpack(done, from, math.min(from + 499, #done)) })
  end
  return res
elseif op == 'nack' then
  local id = ARGV[20]
  local c = owned(id)
  if c ~= 0 then return c end
  local r = failed(b, S, id, now, ARGV[21] == '1', ARGV[22])
  if r == 'requeued' then wake(b) end
  return r
elseif op == 'extend' then
  local id = ARGV[20]
  local c = owned(id)
  if c ~= 0 then return c end
  local deadline = now + num(ARGV[21])
  redis.call('ZADD', b .. ':fly', 'XX', fmt(deadline), id)
  return { 0, deadline }
elseif op == 'release' or op == 'reclaim' then
  local all = redis.call('HGETALL', b .. ':own')
  local dead, back = 0, 0
  for i = 1, #all, 2 do
    local o = all[i + 1]
    if o == consumer or (op == 'reclaim' and string.sub(o, 1, #consumer) == consumer) then
      local r = failed(b, S, all[i], now, true, 'the consumer went away')
      if r == 'dead' then dead = dead + 1 end
      if r == 'requeued' then back = back + 1 end
    end
  end
  -- The consumer's last take is forgotten with it.
  local took = redis.call('HKEYS', b .. ':took')
  for _, o in ipairs(took) do
    if o == consumer or (op == 'reclaim' and string.sub(o, 1, #consumer) == consumer) then
      redis.call('HDEL', b .. ':took', o)
    end
  end
  if back > 0 then wake(b) end
  return dead
end
return redis.error_reply('unknown op ' .. tostring(op))
