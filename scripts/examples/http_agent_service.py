#!/usr/bin/env python3
"""A tiny agent service for `http:` capabilities (standard library only).

AgentMesh POSTs the task input (JSON) and takes a 2xx JSON body as the result. /run scores the sentiment of
{"text": "..."} with a word list. /summarize takes files: a task with artifacts arrives as multipart/form-data
(a part "input" with the JSON, a part per artifact with its file name), and the answer is multipart too (a part
"result" with the JSON, a part per file to give back). It listens on 127.0.0.1 and prints its port on the first line:

    python3 scripts/examples/http_agent_service.py [PORT]
    agentmesh run ... --capability "sentiment=http:http://127.0.0.1:PORT/run" \
        --capability "summarize-file=http:http://127.0.0.1:PORT/summarize"
"""
import email.parser
import email.policy
import http.server
import json
import re
import sys
import uuid

POSITIVE = {"good", "great", "fast", "love", "reliable", "simple", "happy", "works", "beautiful"}
NEGATIVE = {"bad", "slow", "hate", "broken", "fails", "down", "sad", "flaky", "outage"}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path == "/summarize":
            return self.summarize()
        if self.path != "/run":
            return self.reply(404, {"error": "POST /run or /summarize"})
        try:
            task = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            words = re.findall(r"[a-z]+", task["text"].lower())
        except (ValueError, KeyError, TypeError, AttributeError):
            return self.reply(400, {"error": 'expected {"text": "..."}'})
        score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
        label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        self.reply(200, {"sentiment": label, "score": score})

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def summarize(self):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + self.headers.get("Content-Type", "").encode() + b"\r\n\r\n" + self.body())
        if not message.is_multipart():
            return self.reply(400, {"error": "send the files as multipart/form-data"})
        sentences, lines, names = 2, [], []
        for part in message.iter_parts():
            data = part.get_payload(decode=True) or b""
            if part.get_param("name", header="content-disposition") == "input":
                sentences = int(json.loads(data or b"{}").get("sentences", 2))
            elif part.get_filename():
                text = data.decode("utf-8", "replace")
                names.append(part.get_filename())
                lines.append(f"## {part.get_filename()} ({len(text.split())} words)\n\n"
                             + " ".join(re.split(r"(?<=[.!?])\s+", text.strip())[:sentences]) + "\n")
        boundary = uuid.uuid4().hex
        parts = [("result", None, "application/json", json.dumps({"summarized": names}).encode()),
                 ("artifact", "summary.md", "text/markdown", "\n".join(lines).encode())]
        body = b""
        for name, filename, content_type, data in parts:
            disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
            body += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n").encode()
            body += data + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/form-data; boundary={boundary}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

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
