"""custom_monai.handlers"""
