"""How models run: ODE engine (SBML -> JAX, our Rosenbrock/RK solvers)."""
