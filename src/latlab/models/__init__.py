"""latlab.models"""
