"""The editable surface of the blank lab: change X, lower the score."""

X = 0.0

score = (X - 3.0) ** 2
print("---")
print(f"score: {score:.6f}")
