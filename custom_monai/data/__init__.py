"""custom_monai.data"""
