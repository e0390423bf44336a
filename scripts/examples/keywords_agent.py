#!/usr/bin/env python3
"""A tiny agent worker for `exec:` capabilities (standard library only).

AgentMesh writes the task input (JSON) to stdin and takes stdout (JSON) as the result; a non-zero exit fails the
task with the tail of stderr. This one extracts keywords from {"text": "..."}:

    agentmesh run ... --capability "keywords=exec:python3 scripts/examples/keywords_agent.py"
    agentmesh submit --capability keywords --input '{"text": "Agents talk to agents."}' --wait
"""
import collections
import json
import re
import sys

STOP_WORDS = {"a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "is", "it", "of", "on", "or",
              "that", "the", "to", "with", "without", "each", "other", "no"}


def main() -> int:
    try:
        task = json.load(sys.stdin)
    except json.JSONDecodeError as error:
        print(f"input is not JSON: {error}", file=sys.stderr)
        return 2
    text = task.get("text") if isinstance(task, dict) else None
    if not isinstance(text, str):
        print('expected {"text": "..."}', file=sys.stderr)
        return 2
    words = [w for w in re.findall(r"[a-z][a-z'-]+", text.lower()) if w not in STOP_WORDS]
    top = collections.Counter(words).most_common(int(task.get("top", 5)))
    json.dump({"keywords": [word for word, _ in top], "words": len(words)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
