"""How a verdict is reached: settling, ignore rules, classifying leftovers, retained memory, the texts."""
