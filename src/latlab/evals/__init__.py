"""latlab.evals"""
