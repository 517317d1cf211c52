import socket, time, os, threading
PID=int(open('run.pid').read())
s=socket.create_connection(('127.0.0.1',18280))
s.sendall(b'GET /ws/x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n')
print(s.recv(4096).split(b'\r\n')[0])
s.sendall(b'ping1'); print('echo', s.recv(100))
# also a slow request in parallel
def slow():
    import subprocess; t=time.time()
    r=subprocess.run(['curl','-s','-m','20','-o','/dev/null','-w','%{http_code}','http://127.0.0.1:18280/slow/3'],capture_output=True,text=True); print('slow3',r.stdout,'%.2f'%(time.time()-t))
th=threading.Thread(target=slow); th.start(); time.sleep(0.3)
t=time.time(); os.kill(PID,15)
s.settimeout(15)
try:
    d=s.recv(100); print('ws recv after term',d,'%.2f'%(time.time()-t))
except Exception as e: print('ws exc',e,'%.2f'%(time.time()-t))
th.join()
while True:
    try: os.kill(PID,0)
    except OSError: break
    time.sleep(0.05)
print('exit %.2f'%(time.time()-t))
