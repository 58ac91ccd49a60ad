"""A small model for the engine tests: Michaelis-Menten kinetics in a compartment, with a rule."""

# Michaelis-Menten in a compartment of size 2: species stored as amounts, values are concentrations,
# a rate through an assignment rule (the chain rule runs through derived quantities)
ENZYME = """
model enzyme
  compartment C = 2
  species S in C, P in C
  S = 10; P = 0
  J1: S -> P; C * vmax_eff * S / (Km + S)
  vmax_eff := Vm * (1 + P / (P + Ki))
  Vm = 1.5; Km = 3; Ki = 4
end
"""
