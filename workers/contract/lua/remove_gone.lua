-- remove_gone: a gone worker's record goes, unless it beat again meanwhile; the bridges hear
-- of it at once.
-- KEYS[1] the server's record
-- KEYS[2] event channel
-- ARGV[1] the last beat the worker was judged by
-- ARGV[2] server id
-- Returns 1 if removed, 0 if the worker beat again.
if redis.call('HGET', KEYS[1], 'last_beat') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', KEYS[2], 'gone:' .. ARGV[2])
return 1
