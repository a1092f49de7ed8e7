"""latlab.training"""
