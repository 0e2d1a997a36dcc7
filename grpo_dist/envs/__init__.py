"""Environments for multi-turn rollouts: what answers the model between its turns (a tool, a user).

A user implements ``Environment`` in one file and names it by import path in ``rollout.multi_turn.env``.
Built-ins: ``grpo_dist.envs.single_turn:SingleTurn`` (one answer, today's behaviour) and
``grpo_dist.envs.tools:ToolEnv`` (a calculator and a sandboxed Python tool).
"""

from grpo_dist.envs.base import Environment, EnvReply, Message, ModelTurn, load_environment

__all__ = ["EnvReply", "Environment", "Message", "ModelTurn", "load_environment"]
