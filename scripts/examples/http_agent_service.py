#!/usr/bin/env python3
"""A tiny agent service for `http:` capabilities (standard library only).

AgentMesh POSTs the task input (JSON) and takes a 2xx JSON body as the result. This one scores the sentiment of
{"text": "..."} with a word list. It listens on 127.0.0.1 and prints its port on the first line:

    python3 scripts/examples/http_agent_service.py [PORT]
    agentmesh run ... --capability "sentiment=http:http://127.0.0.1:PORT/run"
"""
import http.server
import json
import re
import sys

POSITIVE = {"good", "great", "fast", "love", "reliable", "simple", "happy", "works", "beautiful"}
NEGATIVE = {"bad", "slow", "hate", "broken", "fails", "down", "sad", "flaky", "outage"}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path != "/run":
            return self.reply(404, {"error": "POST /run"})
        try:
            task = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            words = re.findall(r"[a-z]+", task["text"].lower())
        except (ValueError, KeyError, TypeError, AttributeError):
            return self.reply(400, {"error": 'expected {"text": "..."}'})
        score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
        label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        self.reply(200, {"sentiment": label, "score": score})

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
