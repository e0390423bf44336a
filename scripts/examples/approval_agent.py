#!/usr/bin/env python3
"""An agent that asks a person before it acts (human in the loop), standard library only.

It receives {"action": "...", ...}, asks for approval, waits for the answer, and acts only if approved:

    agentmesh run ... --capability "approve=exec:python3 scripts/examples/approval_agent.py"
    agentmesh submit --capability approve --input '{"action": "send the invoice"}' --context customer-42 --follow
    agentmesh reply TASK-ID --input '{"approved": true, "note": "go ahead"}'

The question goes out as an event on the descriptor in AGENTMESH_EVENTS_FD (3):
{"agentmesh": "input-required", "question": …}; the task shows input_required with the question on the node it was
submitted to, and the answer arrives as one JSON line on the descriptor in AGENTMESH_INPUT_FD (4). If the node
running the agent restarts while it waits, the agent runs again and asks again; the answer already given is sent
at once. The conversation id (AGENTMESH_CONTEXT_ID, from submit --context) keys a small memory of past decisions.
"""
import json
import os
import sys

MEMORY = os.environ.get("APPROVAL_MEMORY", "/tmp/agentmesh-approvals")


def ask(question):
    """Asks a person and returns their answer (a JSON value)."""
    os.write(int(os.environ["AGENTMESH_EVENTS_FD"]), (json.dumps({"agentmesh": "input-required", "question": question}) + "\n").encode())
    with os.fdopen(int(os.environ["AGENTMESH_INPUT_FD"]), "r") as answers:
        line = answers.readline()
    if not line:
        print("no answer came (the task was canceled or timed out)", file=sys.stderr)
        sys.exit(1)
    return json.loads(line)


def main():
    task = json.load(sys.stdin)
    if not isinstance(task, dict) or not isinstance(task.get("action"), str):
        print('expected {"action": "..."}', file=sys.stderr)
        return 65  # rejected for good
    context = os.environ.get("AGENTMESH_CONTEXT_ID")
    history = []
    memory = os.path.join(MEMORY, "".join(c if c.isalnum() else "-" for c in context) + ".json") if context else None
    if memory and os.path.exists(memory):
        with open(memory) as file:
            history = json.load(file)
    answer = ask({"prompt": f"Approve: {task['action']}?", "earlier_decisions": len(history)})
    approved = isinstance(answer, dict) and answer.get("approved") is True
    history.append({"action": task["action"], "approved": approved})
    if memory:
        os.makedirs(MEMORY, exist_ok=True)
        with open(memory, "w") as file:
            json.dump(history, file)
    json.dump({"action": task["action"], "approved": approved, "note": answer.get("note") if isinstance(answer, dict) else None,
               "decisions_in_conversation": len(history)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
