"""Protected: the score of an experiment (tests check it is taken from main)."""


def score(x: float) -> float:
    return (x - 3.0) ** 2
