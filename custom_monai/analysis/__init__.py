"""custom_monai.analysis"""
