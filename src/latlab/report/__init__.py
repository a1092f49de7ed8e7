"""latlab.report"""
