# A client of the discovery port, as an application would use it: redis-py's
# Sentinel support, unmodified. It writes w:<i> = i for i = 0, 1, ... through
# whatever the Sentinels name as the primary, prints "ack <i>" for each write
# acknowledged and "err <kind>" for each refused (then tries i again), and
# stops when its stdin closes.
#   python3 writer.py host:port,host:port,... <master name> <password> [key prefix, default w]
import sys
import threading
import time

from redis.exceptions import RedisError
from redis.sentinel import Sentinel

addrs = [a.rsplit(":", 1) for a in sys.argv[1].split(",")]
name, password = sys.argv[2], sys.argv[3] or None
prefix = sys.argv[4] if len(sys.argv) > 4 else "w"
sentinel = Sentinel([(h, int(p)) for h, p in addrs], socket_timeout=0.5,
                    sentinel_kwargs={"password": password, "socket_timeout": 0.5})
primary = sentinel.master_for(name, socket_timeout=0.5, password=password)

stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
i = 0
while not stop.is_set():
    try:
        primary.set("%s:%d" % (prefix, i), i)
        print("ack %d" % i, flush=True)
        i += 1
    except RedisError as e:
        print("err %s" % type(e).__name__, flush=True)
        time.sleep(0.02)
    time.sleep(0.001)
print("done", flush=True)
