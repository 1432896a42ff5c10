"""custom_monai.transforms"""
