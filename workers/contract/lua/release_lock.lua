-- release_lock: let a lock go, if this holder still holds it.
-- KEYS[1] the lock
-- ARGV[1] this holder's token
-- Returns 1 if released, 0 if another held it (or nobody).
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
