"""Proposers: state in, proposals out (``space``: knob mutations; ``llm``; ``agent``)."""
