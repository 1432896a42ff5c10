"""custom_monai.networks"""
