#!/usr/bin/env python3
"""The agents of the example research workflow (scripts/examples/research.yaml), standard library only.

One script, three roles, picked by its first argument:

    research   {"topic": T, "source": S}  -> {"source": S, "notes": [...]}   notes kept in $RESEARCH_NOTES/
    summarize  {"topic": T, "notes": [...], "keywords": [...], "fail": bool} -> {"summary": "..."}
    discard    {"source": S}              -> {"discarded": S}   the compensation of research: deletes the notes

While it works, research reports progress the AgentMesh way: JSON lines written to the file descriptor named by
AGENTMESH_EVENTS_FD (3), which the submitting node streams to `agentmesh task ID --follow` and GET
/v1/tasks/ID/events. summarize fails on purpose when its input says "fail": true, so the demo can show the saga
compensating the research steps newest first.
"""
import json
import os
import sys
import time

NOTES = os.environ.get("RESEARCH_NOTES", "/tmp/agentmesh-research-notes")


def progress(event):
    """One progress event; a no-op when the node gives the agent no events channel."""
    fd = os.environ.get("AGENTMESH_EVENTS_FD")
    if fd:
        os.write(int(fd), (json.dumps(event) + "\n").encode())


def notes_path(task):
    safe = "".join(c if c.isalnum() else "-" for c in f"{task.get('topic', '')}-{task['source']}")
    return os.path.join(NOTES, safe + ".json")


def research(task):
    notes = []
    for step, angle in enumerate(["background", "recent work", "open questions"], start=1):
        time.sleep(0.05)
        notes.append(f"{task['source']}: {angle} on {task['topic']}")
        progress({"source": task["source"], "step": step, "of": 3, "note": notes[-1]})
    os.makedirs(NOTES, exist_ok=True)
    with open(notes_path(task), "w") as file:
        json.dump(notes, file)
    return {"source": task["source"], "notes": notes}


def summarize(task):
    if task.get("fail") is True:
        print("the summarizer is out of tokens (asked to fail)", file=sys.stderr)
        sys.exit(1)
    sources = [item["source"] for item in task["notes"]]
    keywords = ", ".join(task.get("keywords", [])[:3])
    return {"summary": f"{task['topic']}: {len(sources)} sources ({', '.join(sources)}); key terms {keywords}."}


def discard(task):
    try:
        os.remove(notes_path(task))
    except FileNotFoundError:
        pass  # already gone: compensations may run more than once
    return {"discarded": task["source"]}


def main():
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    roles = {"research": research, "summarize": summarize, "discard": discard}
    if role not in roles:
        print(f"usage: research_agents.py {'|'.join(roles)}", file=sys.stderr)
        return 2
    try:
        task = json.load(sys.stdin)
    except json.JSONDecodeError as error:
        print(f"input is not JSON: {error}", file=sys.stderr)
        return 65  # rejected for good: retrying cannot help
    json.dump(roles[role](task), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
