"""The driver behind scripts/chaos: three real nodes, kill -9 of executors and the submitter in a row, and a check
that every task still ends completed with its own result, with no two runs of one task at the same time."""
import argparse, http.client, json, os, random, shutil, signal, socket, subprocess, sys, tempfile, threading, time

AGENT = """import json, os, sys, time
task = json.load(sys.stdin)
def note(kind):
    with open(sys.argv[1], "a") as log:
        log.write(f"{kind} {task['n']} {sys.argv[2]} {os.getpid()} {time.monotonic()}\\n")
note("start")
time.sleep(0.02)
note("end")
print(json.dumps(task))
"""


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def call(home, method, path, body=None, timeout=10):
    connection = UnixHTTP(os.path.join(home, "control.sock"), timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, binary, root, name, port, arguments):
        self.binary, self.home, self.name = binary, os.path.join(root, name), name
        self.arguments = ["run", "--home", self.home, "--listen", f"127.0.0.1:{port}", "--open", "--timers", "local"] + arguments
        self.log = open(os.path.join(root, name + ".log"), "ab")
        self.process = None

    def start(self):
        self.process = subprocess.Popen([self.binary] + self.arguments, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if call(self.home, "GET", "/v1/members", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"chaos: node {self.name} did not start (see its log)")

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def runs_by_task(log):
    open_runs, runs = {}, {}
    for line in open(log).read().splitlines() if os.path.exists(log) else []:
        fields = line.split()
        if len(fields) != 5:
            continue
        key = fields[2] + "/" + fields[3]
        if fields[0] == "start":
            open_runs[key] = (int(fields[1]), float(fields[4]))
        elif fields[0] == "end" and key in open_runs:
            number, started = open_runs.pop(key)
            runs.setdefault(number, []).append((started, float(fields[4])))
    for number, started in open_runs.values():
        runs.setdefault(number, []).append((started, float("inf")))
    return runs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--agentmesh", required=True)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--settle", type=float, default=300, help="seconds to wait for every task to end")
    options = parser.parse_args()
    rng = random.Random(options.seed)
    root = tempfile.mkdtemp(prefix="agentmesh-chaos.")
    runs_log = os.path.join(root, "runs.log")
    with open(os.path.join(root, "rec.py"), "w") as f:
        f.write(AGENT)
    for name in ["a", "b", "c"]:
        extra = [] if name == "a" else ["--network-key-file", os.path.join(root, "a", "network.key")]
        subprocess.run([options.agentmesh, "init", "--home", os.path.join(root, name), "--name", name] + extra,
                       check=True, stdout=subprocess.DEVNULL)
    ports = {name: free_port() for name in "abc"}
    join = ["--join", f"127.0.0.1:{ports['a']}"]
    nodes = {"a": Node(options.agentmesh, root, "a", ports["a"], [])}
    for name in "bc":
        agent = f"rec*8=exec:python3 {root}/rec.py {runs_log} {name}"
        nodes[name] = Node(options.agentmesh, root, name, ports[name], join + ["--capability", agent])
    ok = False
    try:
        for node in nodes.values():
            node.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            members = call(nodes["a"].home, "GET", "/v1/members")[1]["members"]
            if sum(1 for m in members if m.get("capabilities")) >= 2:
                break
            time.sleep(0.1)

        # The kills land at random points while the tasks are being posted.
        kill_points = sorted(rng.sample(range(options.tasks // 20, options.tasks), 5))
        order = ["b", "c", "b", "c", "a"]
        ids, refused, reasons = {}, 0, {}
        restarts = []

        def restart_later(node, delay):
            time.sleep(delay)
            node.start()

        for number in range(options.tasks):
            if kill_points and number == kill_points[0]:
                kill_points.pop(0)
                victim = nodes[order.pop(0)]
                victim.kill()
                delay = rng.uniform(0.1, 0.6)
                if victim.name == "a":
                    time.sleep(delay)
                    victim.start()
                else:
                    thread = threading.Thread(target=restart_later, args=(victim, delay))
                    thread.start()
                    restarts.append(thread)
            body = {"capability": "rec", "input": {"n": number}, "timeout_seconds": 600, "max_attempts": 100,
                    "wait_for_capability": True}
            for _ in range(200):  # while a itself is down
                try:
                    status, answer = call(nodes["a"].home, "POST", "/v1/tasks", body)
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                raise SystemExit("chaos: a never came back")
            if status != 202:
                refused += 1
                reasons[f"{status} {answer.get('error') if isinstance(answer, dict) else answer}"] = True
                continue
            ids[answer["id"]] = number
        for thread in restarts:
            thread.join()

        posted_at = time.monotonic()
        deadline = posted_at + options.settle
        states = {}
        while time.monotonic() < deadline:
            listed = call(nodes["a"].home, "GET", "/v1/tasks?limit=10000", timeout=30)[1]["tasks"]
            states = {t["id"]: t for t in listed if t["id"] in ids}
            if len(states) == len(ids) and all(t["state"] in ("completed", "failed", "expired", "canceled") for t in states.values()):
                break
            time.sleep(1)
        settled = time.monotonic() - posted_at
        completed = [i for i, t in states.items() if t["state"] == "completed" and t.get("result") == {"n": ids[i]}]
        runs = runs_by_task(runs_log)
        overlapping = [n for n, spans in runs.items()
                       if any(x[1] > y[0] for x, y in zip(sorted(spans), sorted(spans)[1:]))]
        by_state = {}
        for task in states.values():
            by_state[task["state"]] = by_state.get(task["state"], 0) + 1
        print(f"chaos: {len(completed)} of {len(ids)} completed with their own result ({refused} refused while posting), "
              f"states {json.dumps(by_state, sort_keys=True)}, {len(overlapping)} tasks ran twice at once, "
              f"{sum(len(s) for s in runs.values())} runs, settled {settled:.1f} s after the last post")
        for reason in list(reasons)[:3]:
            print(f"  refused: {reason}")
        stuck = [t for t in states.values() if t["state"] not in ("completed",)][:5]
        for task in stuck:
            print(f"  not completed: {task['id']} {task['state']} {task.get('error') or task.get('waiting') or ''}")
        ok = len(completed) == len(ids) and len(ids) == options.tasks and not overlapping
    finally:
        for node in nodes.values():
            node.stop()
        if ok and not os.environ.get("KEEP"):
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"chaos: homes and logs kept in {root}", file=sys.stderr)
    sys.exit(0 if ok else 1)


main()
