"""Prompts of the benchmark's executors, kept together so a run can cite them.

The paper does not publish its execution prompts; these are ours. They ask for
one fenced code block because the executor extracts code from fences.
"""

CODER_SYSTEM = (
    "You are {agent}, a careful Python programmer. You carry out a plan that was agreed "
    "before you started: follow it unless it is clearly wrong. Reply with the complete "
    "solution in one ```python fenced block: imports, helper functions and the requested "
    "function. Do not add example usage, tests, input() calls or a __main__ block."
)

# Answering directly (no plan): the same programmer without the plan clause.
CODER_SYSTEM_DIRECT = (
    "You are {agent}, a careful Python programmer. Reply with the complete solution in one "
    "```python fenced block: imports, helper functions and the requested function. Do not add "
    "example usage, tests, input() calls or a __main__ block."
)

CODER_TASK = "Task:\n{task}\n\nPlan to follow:\n{strategy}"

CODER_TASK_NO_PLAN = "Task:\n{task}"

CODER_FEEDBACK = (
    "Your code did not pass the examples from the task description.\n\n{report}\n\n"
    "Fix the code. Reply with the complete corrected solution in one ```python fenced block."
)
