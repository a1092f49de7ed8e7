"""latlab.world"""
