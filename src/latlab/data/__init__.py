"""latlab.data"""
